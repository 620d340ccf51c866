"""Lesion insertion into real CT: every voxel outside the edit region kept exact. One module per role:

    insert     `insert_lesions`, the entry (`python -m difflung insert`; its arguments: `difflung.cli.insert`)
    scan_io    reading the CT and the lesion mask, writing the edited CT checked against the input, `InsertError`
    shapes     lesion shapes: 3D phantom lesions placed on healthy lung (`synthesize_lesions`), a mask's new lesions
    region     the one edit region (`edit_region`) of both scan and whole-slice insertion
    painting   RePaint into a scan window by window and into whole slices (the `+insert` arm), one `condition`
    zpaint     painting continuous in z: each slice guided by the slice below, initial noise correlated in z
    patches    the patch model's data (resampling on the patch grid, patch datasets); the model itself is trained
               and saved by `difflung.diffusion.patch_model`
    checks     the measurements of an insertion, from the files it wrote (z-continuity and texture spread too)
    truth      ground truth from the phantom: a patient rendered with and without its lesions, compared

May import: `difflung.core`, `difflung.data`, `difflung.labels`, `difflung.phantom`, `difflung.diffusion`,
`difflung.judging`.
"""
from difflung.insertion.insert import insert_lesions, load_insert_model, paintable_classes
from difflung.insertion.patches import (PATCH_SPACING_MM, build_patch_dataset, cut_patches, pathology_volumes,
                                        phantom_volumes, real_volumes, sample_plane)
from difflung.insertion.painting import (InsertConfig, InsertedSet, condition, insert_into_slices, insertion_arm, paint,
                                         plan_windows)
from difflung.insertion.region import edit_region
from difflung.insertion.scan_io import InsertError, lesions_path
from difflung.insertion.shapes import (PHANTOM_CLASSES, SHAPE_LIMITS, TARGET_TOLERANCE, ShapeLimits, lesion_mask_3d,
                                       new_lesions, phantom_lesion_extents, synthesize_lesions, synthesize_mask_file)

__all__ = [
    "insert_lesions", "load_insert_model", "paintable_classes", "InsertConfig", "InsertedSet", "condition",
    "insert_into_slices", "insertion_arm", "paint", "plan_windows", "edit_region", "InsertError", "lesions_path",
    "PHANTOM_CLASSES", "SHAPE_LIMITS", "TARGET_TOLERANCE", "ShapeLimits", "lesion_mask_3d", "new_lesions",
    "phantom_lesion_extents", "synthesize_lesions",
    "synthesize_mask_file", "PATCH_SPACING_MM", "build_patch_dataset", "cut_patches", "pathology_volumes",
    "phantom_volumes", "real_volumes", "sample_plane",
]
