"""Progress of a long phase (decoding a folder, training the domain classifier, encoding, evaluating): a bar on a
terminal, and otherwise (a log file, ``--no-progress``) a line when it starts, every ``LINE_SECONDS`` and when it
ends, so that no phase of a 200,000-image run is silent. ``--no-progress`` drops the bars, never the lines."""

from __future__ import annotations

import sys
import time

LINE_SECONDS = 15.0


class Phase:
    """``with Phase("decoding images", total=60_000, unit="images") as p: p.advance(k)`` prints
    'decoding images: 60,000 images' at the start, '... 12,000/60,000 (2,100/s, 23 s left)' as it goes (a bar on a
    terminal when ``bar``) and 'decoding images: done, 60,000 images in 28.6 s (2,100/s)' at the end, on stderr."""

    def __init__(self, what: str, total: int, unit: str = "images", bar: bool = True, stream=None):
        self.what, self.total, self.unit = what, int(total), unit
        self.stream = stream or sys.stderr
        self.done, self.start, self.last_line = 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if bar and getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=what, unit=unit.rstrip("s") or unit, leave=False,
                            dynamic_ncols=True, file=self.stream)

    def __enter__(self) -> "Phase":
        self._say(f"{self.what}: {self.total:,} {self.unit}")
        return self

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.perf_counter()
        if now - self.last_line >= LINE_SECONDS and self.done < self.total:
            self.last_line = now
            left = (self.total - self.done) / max(self.rate(), 1e-9)
            self._say(f"{self.what}: {self.done:,}/{self.total:,} ({self.rate():,.0f}/s, {left:.0f} s left)")

    def __exit__(self, kind, value, traceback) -> None:
        if self.bar is not None:
            self.bar.close()
        if kind is None:
            seconds = time.perf_counter() - self.start
            self._say(f"{self.what}: done, {self.done:,} {self.unit} in {seconds:.1f} s ({self.rate():,.0f}/s)")

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)
