"""What each metric in ``metrics.csv`` means and which direction is better (used by reports)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str  # column header in tables
    higher_is_better: bool
    unit: str = ""
    description: str = ""
    decimals: int = 2


CATALOG: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("fid", "FID", False, "", "clean-fid FID (Inception-v3 pool3) against the real image set"),
    MetricInfo("fid_clip", "FID_CLIP", False, "", "FID on CLIP ViT-B/32 image embeddings (clean-fid)"),
    MetricInfo("kid", "KID x1e3", False, "", "clean-fid kernel inception distance, times 1000", 3),
    MetricInfo("psnr_gt", "PSNR gt", True, "dB", "PSNR against the synthetic ground truth"),
    MetricInfo("ssim_gt", "SSIM gt", True, "", "SSIM against the synthetic ground truth", 3),
    MetricInfo("lpips_gt", "LPIPS gt", False, "", "LPIPS (VGG) against the synthetic ground truth", 3),
    MetricInfo("hair_color_de", "Hair dE00", False, "", "CIEDE2000 between mean hair colours of result and "
               "ground truth (ground-truth hair region)"),
    MetricInfo("psnr_outside_hair", "PSNR non-hair", True, "dB",
               "PSNR against the face image outside the (dilated) hair and headwear regions of face and target"),
    MetricInfo("psnr_rec", "PSNR rec", True, "dB", "PSNR against the face image (task rec)"),
    MetricInfo("ssim_rec", "SSIM rec", True, "", "SSIM against the face image (task rec)", 3),
    MetricInfo("lpips_rec", "LPIPS rec", False, "", "LPIPS (VGG) against the face image (task rec)", 3),
    MetricInfo("identity", "ID sim", True, "", "dlib face-descriptor similarity to the face image "
               "(1 - distance), over images where a face is detected", 3),
    MetricInfo("clip_text_shape", "CLIP shape", True, "", "100 x CLIP ViT-B/32 cosine similarity of the result's "
               "hair region and the shape prompt (text references)", 1),
    MetricInfo("clip_text_color", "CLIP color", True, "", "100 x CLIP ViT-B/32 cosine similarity of the result's "
               "hair region and the colour prompt (text references)", 1),
    MetricInfo("time_median_s", "Time s", False, "s", "median wall time per item", 3),
    MetricInfo("time_iqr_s", "Time IQR s", False, "s", "interquartile range of the time per item", 3),
    MetricInfo("peak_mem_mb", "Mem MB", False, "MB", "peak memory per item (CUDA max allocated, or process "
               "peak RSS on CPU)", 0),
    MetricInfo("failures", "Failures", False, "", "items that failed (error, timeout, bad output)", 0),
    # per_item.csv only (not a metrics.csv row): the wall time of one item
    MetricInfo("time_s", "Time s", False, "s", "wall time of one item (per_item.csv)", 3),
)}


def info(name: str) -> MetricInfo:
    """Catalog entry for ``name`` (unknown metrics: higher is better, label = name)."""
    return CATALOG.get(name, MetricInfo(name, name, True))
