"""Procedural 2D axial chest-CT phantom in HU with project label maps (`difflung.labels`).

A patient is a random 3D anatomy (`sample_patient`): body outline with subcutaneous fat and muscle, ribs, spine,
sternum and scapulae, a mediastinum with heart, aorta, pulmonary trunk and oesophagus, two lungs whose cross
section follows z (small apices, full mid-lung, diaphragm domes at the base), trachea and main bronchi, and
tapering, branching pulmonary artery / vein / bronchus trees grown in 3D inside the lungs. Pathologies are 3D
lesions drawn inside the lung field:

    emphysema  clusters of centrilobular holes, paraseptal subpleural holes and bullae (>= 1 cm), below -950 HU,
               upper-zone predominance;
    ggo        hazy patches of -750..-300 HU, vessels still visible through them;
    fibrosis   subpleural, basal reticulation with honeycomb cysts (3-10 mm, 1-3 mm walls, stacked rows from
               the pleura): a two-peak texture (soft-tissue lines and cyst air).

Axial slices (`phantom_slice`) are rendered at the requested size with physical dimensions (field of view
`fov_mm`), anti-aliased geometry, partial-volume blur and spatially correlated CT noise. Slices are thin
sections (`recon_thickness_mm`) spaced `slice_thickness_mm` apart, so structures smaller than the spacing
(centrilobular holes, honeycomb cysts, reticulation) are drawn afresh on every slice inside 3D lesion extents.

Coordinates: x in mm towards the patient's left (image right), y in mm towards posterior (image down), z from
apex (0) to base (1). Label ids: 0 background (outside the body), 1 body, 2 healthy lung (vessels inside the lung
stay 2), 3 airway lumen, 4 emphysema, 5 ggo, 6 fibrosis.

Randomness comes only from the `numpy.random.Generator` passed in; every sub-stream (anatomy, trees, each
pathology, each lesion and slice) is derived from it, so one seed gives byte-identical arrays, and changing a
pathology knob changes neither the anatomy nor the other pathologies.

Modules, in the order a slice is made:
    config     `PhantomConfig`, `PatientParams`, tissue HU values and bands, random-stream derivation
    sdf        signed-distance and coverage primitives
    geometry   body, chest wall, mediastinum and the lungs' signed distance as a function of height
    anatomy    scalar anatomy, vessel and bronchus trees, lung volume
    patient    `sample_patient`: anatomy, trees, severity and 3D lesions (frequency knobs, zonal predominance)
    canvas     rasterisation: pixel grid, anti-aliased discs and tubes, the painting `Canvas`
    noise      smooth random fields, textures, the Gaussian blur
    body       painters outside the lungs (body wall, bones, mediastinum)
    lesions    emphysema, GGO and fibrosis painters on a `LesionCanvas`
    render     `render_slice`, `slice_positions`: one slice painted, blurred and noised
    cohort     `phantom_slice`, `phantom_patient`, `phantom_cohort`
"""
from difflung.phantom.cohort import phantom_cohort, phantom_patient, phantom_slice
from difflung.phantom.config import HU, HU_BANDS, PatientParams, PhantomConfig
from difflung.phantom.patient import sample_patient
from difflung.phantom.render import render_slice, slice_positions

__all__ = [
    "PhantomConfig", "PatientParams", "HU_BANDS", "HU", "phantom_slice", "sample_patient", "render_slice",
    "phantom_patient", "phantom_cohort", "slice_positions",
]
