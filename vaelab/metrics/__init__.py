"""Evaluation metrics: likelihood side (ELBO, IWAE, reconstruction, KL) and sample side (FID/KID/IS, MMD,
MS-SSIM diversity, precision/recall, class coverage, sharpness, synthetic-data utility).

Every function returns plain numbers together with the settings they were measured with.
"""
