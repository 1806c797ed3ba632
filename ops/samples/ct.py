"""Synthetic CT: a plain abdominal phantom, a randomised abdomen with its spleen label, and
DICOM series of a volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ops.errors import InvalidParameter

CT_GEOMETRY: dict[str, Any] = {
    "spacing": [0.8, 0.8, 2.5],
    "origin": [-64.0, -64.0, -100.0],
    "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
}


def ct_phantom(shape_zyx: tuple[int, int, int] = (64, 160, 160), seed: int = 0) -> np.ndarray:
    """An int16 (z, y, x) volume in Hounsfield units: air, a soft-tissue body, a bright
    spine and a spleen-like ellipsoid (≈ 50 HU) on the patient's left, with noise."""
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape_zyx)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    volume = np.full(shape_zyx, -1000.0, dtype=np.float32)
    volume[(xx / 0.85) ** 2 + (yy / 0.65) ** 2 <= 1] = 20.0
    volume[((xx) / 0.12) ** 2 + ((yy - 0.45) / 0.12) ** 2 <= 1] = 700.0
    spleen = ((xx - 0.45) / 0.2) ** 2 + ((yy + 0.1) / 0.28) ** 2 + (zz / 0.5) ** 2 <= 1
    volume[spleen] = 50.0
    volume += np.random.default_rng(seed).normal(0, 8, shape_zyx).astype(np.float32)
    return np.clip(volume, -1024, 3071).astype(np.int16)


def ct_series(
    out_dir: str | Path,
    volume: np.ndarray | None = None,
    geometry: dict[str, Any] | None = None,
    *,
    rescale: tuple[float, float] = (1.0, -1024.0),
    unsigned: bool = False,
    bits_stored: int = 16,
    monochrome1: bool = False,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    shuffle_seed: int | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_description: str = "Carina CT phantom",
) -> list[Path]:
    """Write a (z, y, x) volume of Hounsfield units as a synthetic CT DICOM series, one file a slice.

    Slice k lies at ``origin + direction @ (0, 0, k * spacing_z)``; ImageOrientationPatient is
    the direction's x and y columns (give a right-handed direction for the normal to be its z
    column). Pixels are 16-bit with ``stored = (value - intercept) / slope``, which must be an
    integer in the stored range; MONOCHROME1 stores ``(2**bits_stored - 1) - stored`` (unsigned)
    or ``-1 - stored`` (signed), and moves the 40/400 window to match.

    Args:
        out_dir: created if needed.
        volume: integer HU values; default ``ct_phantom((8, 32, 32))``.
        geometry: default :data:`CT_GEOMETRY`.
        rescale: ``(RescaleSlope, RescaleIntercept)``.
        unsigned: PixelRepresentation 0 (uint16) instead of 1 (int16).
        bits_stored: BitsStored (HighBit one less); BitsAllocated is 16.
        monochrome1: write MONOCHROME1 (inverted) pixels.
        transfer_syntax: any syntax pydicom can encode here: explicit or implicit VR little
            endian, RLE Lossless, JPEG 2000 Lossless (pylibjpeg-openjpeg).
        shuffle_seed: when given, file names and InstanceNumbers are a random permutation of
            the slice order, so neither can be used to sort.
        series_uid, study_uid: default fresh UIDs.

    Returns:
        The files written, in z order.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, generate_uid
    from pydicom.valuerep import format_number_as_ds

    def ds_text(value: float) -> str:
        value = float(value)
        return str(int(value)) if value.is_integer() else format_number_as_ds(value)

    volume = ct_phantom((8, 32, 32)) if volume is None else np.asarray(volume)
    geometry = CT_GEOMETRY if geometry is None else geometry
    slope, intercept = (float(v) for v in rescale)
    stored = (volume.astype(np.float64) - intercept) / slope
    if not np.array_equal(stored, np.round(stored)):
        raise InvalidParameter(f"values are not integers under the rescale {rescale}")
    low, high = (0, (1 << bits_stored) - 1) if unsigned else (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1)
    if stored.min() < low or stored.max() > high:
        raise InvalidParameter(f"stored values {stored.min()}..{stored.max()} do not fit {bits_stored} bits "
                         f"({'unsigned' if unsigned else 'signed'})")
    pivot = high if unsigned else -1
    if monochrome1:
        stored = pivot - stored
    stored = stored.astype("<u2" if unsigned else "<i2")
    center = slope * pivot + 2 * intercept - 40.0 if monochrome1 else 40.0

    spacing = np.asarray(geometry["spacing"], dtype=np.float64)
    origin = np.asarray(geometry["origin"], dtype=np.float64)
    direction = np.asarray(geometry["direction"], dtype=np.float64).reshape(3, 3)
    order = (np.random.default_rng(shuffle_seed).permutation(volume.shape[0]) if shuffle_seed is not None
             else np.arange(volume.shape[0]))
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    syntax = UID(transfer_syntax)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(volume.shape[0]):
        position = origin + direction @ np.array([0.0, 0.0, k * spacing[2]])
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta.TransferSyntaxUID = syntax if not syntax.is_compressed else pydicom.uid.ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.StudyID = "Carina^Phantom", "CARINA-PHANTOM", "1"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240101", "120000", ""
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 1, series_description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImagePositionPatient = [ds_text(v) for v in position]
        ds.ImageOrientationPatient = [ds_text(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [ds_text(spacing[1]), ds_text(spacing[0])]
        ds.SliceThickness = ds_text(spacing[2])
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 0 if unsigned else 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = ds_text(slope), ds_text(intercept), "HU"
        ds.WindowCenter, ds.WindowWidth = ds_text(center), "400"
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        if syntax.is_compressed:
            ds.compress(syntax, generate_instance_uid=False)
        path = out_dir / f"CT{int(order[k]) + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """A 3×3 rotation (radians) about z, then y, then x, acting on (x, y, z) column vectors."""
    cz, sz, cy, sy, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def _ellipsoid(grid, centre, radii, rotation=None, lobes=None, bend=0.0) -> np.ndarray:
    """Boolean mask of a (rotated, lobulated, bent) ellipsoid on a grid of mm coordinates.

    ``grid`` is (z, y, x) broadcastable arrays in mm; ``centre`` and ``radii`` are (x, y, z) mm.
    ``lobes`` is a list of (order, amplitude, phase): the surface radius becomes
    ``1 + Σ amplitude · cos(order · azimuth + phase)`` in the ellipsoid's own frame;
    ``bend`` shifts the first axis by ``bend · v²`` so the body curves into a crescent.
    """
    zz, yy, xx = grid
    d = [xx - centre[0], yy - centre[1], zz - centre[2]]
    if rotation is not None:
        # The rotation maps the ellipsoid's frame to the patient's; its transpose maps back.
        d = [rotation[0, i] * d[0] + rotation[1, i] * d[1] + rotation[2, i] * d[2] for i in range(3)]
    u, v, w = (d[i] / radii[i] for i in range(3))
    if bend:
        u = u + bend * v * v
    r2 = u * u + v * v + w * w
    if not lobes:
        return r2 <= 1.0
    azimuth = np.arctan2(v, u)
    limit = 1.0 + sum(a * np.cos(k * azimuth + p) for k, a, p in lobes)
    return r2 <= limit * limit


def _smooth_field(grid, rng: np.random.Generator, wavelength_mm: float, amplitude: float, terms: int = 6) -> np.ndarray:
    """A smooth random float32 field on the full grid: a sum of plane waves, roughly ±amplitude."""
    axes = [g.ravel().astype(np.float64) for g in grid]   # z, y, x
    waves = []
    for _ in range(terms):
        k = rng.normal(size=3)
        k *= 2 * np.pi / (wavelength_mm * rng.uniform(0.6, 1.6) * np.linalg.norm(k))
        waves.append((k[::-1], rng.uniform(0, 2 * np.pi)))
    # cos(kz·z + ky·y + kx·x + φ) is the real part of a product of three 1-D exponentials,
    # so the sum over waves is one small complex matrix product.
    ez = np.stack([np.exp(1j * (kzyx[0] * axes[0] + phase)) for kzyx, phase in waves])
    ey = np.stack([np.exp(1j * kzyx[1] * axes[1]) for kzyx, _ in waves])
    ex = np.stack([np.exp(1j * kzyx[2] * axes[2]) for kzyx, _ in waves])
    zy = (ez[:, :, None] * ey[:, None, :]).reshape(terms, -1)
    field = (zy.T @ ex).real.reshape(len(axes[0]), len(axes[1]), len(axes[2]))
    return (field * (amplitude / np.sqrt(terms / 2))).astype(np.float32)


def _box_smooth(volume: np.ndarray) -> np.ndarray:
    """In place [1, 2, 1] / 4 smoothing along each axis (edges kept): a touch of partial volume."""
    for axis in range(volume.ndim):
        a = np.moveaxis(volume, axis, 0)
        if a.shape[0] >= 3:
            a[1:-1] = 0.25 * a[:-2] + 0.5 * a[1:-1] + 0.25 * a[2:]
    return volume


ORGAN_LABELS = {"liver": 1, "kidney": 2, "spleen": 3}  # the values of abdomen_phantom's label


def spleen_phantom(
    shape_zyx: tuple[int, int, int] = (96, 256, 256),
    spacing_xyz: tuple[float, float, float] = (1.2, 1.2, 2.5),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A randomised abdominal CT phantom with its spleen label, for training and testing the
    ``spleen_ct`` model: :func:`abdomen_phantom`'s volume, and 1 where its label is the spleen.

    Returns:
        ``(volume, label)``: int16 HU and uint8 (1 = spleen), both (z, y, x) of ``shape_zyx``.
    """
    volume, organs = abdomen_phantom(shape_zyx, spacing_xyz, seed)
    return volume, (organs == ORGAN_LABELS["spleen"]).astype(np.uint8)


def abdomen_phantom(
    shape_zyx: tuple[int, int, int] = (96, 256, 256),
    spacing_xyz: tuple[float, float, float] = (1.2, 1.2, 2.5),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A randomised abdominal CT phantom with its organ labels (:data:`ORGAN_LABELS`: liver,
    kidneys, spleen), for training and testing the ``spleen_ct`` and ``abdomen_ct`` models.
    An organ's label is where it stays visible once everything is painted.

    The body is an ellipse that fills 70–95 % of the field of view (as a CT reconstruction
    would), so organ sizes in mm scale with ``shape × spacing``; z extents are in the same
    body-relative units. Axes follow :func:`ct_phantom`: +x is the patient's left, +y is
    posterior, +z is superior. The anatomy: subcutaneous fat (≈ −100 HU), an abdominal muscle
    wall, a spine with paraspinal muscles, ribs, an aorta, a large liver on the right (10–20 HU
    brighter than the spleen, ≈ 65 HU), two kidneys (≈ 30 HU), stomach and bowel loops (gas or
    fluid), and the spleen on the left (44–54 HU; random size, position, orientation,
    lobulation and curvature); between them a fat/soft-tissue texture (−80..30 HU), then a
    smooth bias, slight blur and Gaussian noise (σ 4–18 HU). Muscles, bowel, stomach wall and
    the aorta share the spleen's intensity, so a threshold cannot find it.

    Args:
        shape_zyx: array shape (z, y, x).
        spacing_xyz: voxel size in mm, (x, y, z) order as in :data:`CT_GEOMETRY`.
        seed: everything random derives from it.

    Returns:
        ``(volume, organs)``: int16 HU and uint8 (:data:`ORGAN_LABELS`, 0 elsewhere), both
        (z, y, x) of ``shape_zyx``.
    """
    if len(shape_zyx) != 3 or min(shape_zyx) < 1:
        raise InvalidParameter(f"shape_zyx must be three positive sizes, got {shape_zyx}")
    if len(spacing_xyz) != 3 or min(spacing_xyz) <= 0:
        raise InvalidParameter(f"spacing_xyz must be three positive sizes in mm, got {spacing_xyz}")
    rng = np.random.default_rng(seed)
    u = rng.uniform
    nz, ny, nx = (int(n) for n in shape_zyx)
    sx, sy, sz = (float(s) for s in spacing_xyz)
    # mm from the volume centre, as open grids: (z, 1, 1), (1, y, 1), (1, 1, x)
    zz = ((np.arange(nz) - (nz - 1) / 2) * sz).astype(np.float32)[:, None, None]
    yy = ((np.arange(ny) - (ny - 1) / 2) * sy).astype(np.float32)[None, :, None]
    xx = ((np.arange(nx) - (nx - 1) / 2) * sx).astype(np.float32)[None, None, :]
    grid = (zz, yy, xx)
    half_z = nz * sz / 2

    # Body: a super-ellipse whose size drifts a little along z.
    a = u(0.70, 0.95) * nx * sx / 2
    b = min(a * u(0.62, 0.85), 0.95 * ny * sy / 2)
    cx, cy = a * u(-0.04, 0.04), b * u(-0.06, 0.06)
    taper = 1 + u(-0.06, 0.06) * zz / max(half_z, 1e-3)
    power = u(2.0, 2.8)

    def body_at(scale: float) -> np.ndarray:
        return (np.abs((xx - cx) / (a * scale * taper)) ** power
                + np.abs((yy - cy) / (b * scale * taper)) ** power) <= 1.0

    body = body_at(1.0)
    fat = u(0.0, 0.12)
    muscle = u(0.015, 0.04) if u() < 0.8 else 0.0
    inner = body_at(1.0 - fat - muscle)
    texture = _smooth_field(grid, rng, wavelength_mm=0.12 * a, amplitude=u(5, 18))
    volume = np.where(body, np.float32(u(-110, -85)), np.float32(-1000.0))
    volume = np.where(body_at(1.0 - fat), np.float32(u(40, 55)), volume)
    # Between the organs: fat with bowel and vessels, from fatty (−80 HU) to dense (25 HU).
    volume = np.where(inner, u(-80, 30) + texture, volume).astype(np.float32)

    organs = np.zeros(volume.shape, np.uint8)

    def paint(mask: np.ndarray, hu: float | np.ndarray, within: np.ndarray | None = inner,
              organ: int = 0) -> np.ndarray:
        mask = mask & within if within is not None else mask
        np.copyto(volume, np.float32(hu) if np.isscalar(hu) else hu, where=mask)
        organs[mask] = organ  # what is painted over an organ hides it
        return mask

    def blob(centre, radii, lobes=None, bend=0.0, **kwargs) -> np.ndarray:
        # Evaluated only inside a bounding box: most blobs are small next to the volume.
        reach = max(radii) * (1.0 + sum(abs(amp) for _, amp, _ in lobes or ()) + abs(bend))
        box = tuple(slice(max(0, int(np.searchsorted(g.ravel(), c - reach))),
                          int(np.searchsorted(g.ravel(), c + reach, side="right")))
                    for g, c in zip(grid, centre[::-1]))
        mask = np.zeros(volume.shape, dtype=bool)
        sub = (zz[box[0]], yy[:, box[1]], xx[..., box[2]])
        mask[box] = _ellipsoid(sub, centre, radii, lobes=lobes, bend=bend, **kwargs)
        return mask

    # Bowel loops (gas or fluid) and the stomach on the left, in front of the spleen.
    for _ in range(rng.integers(6, 16)):
        centre = (cx + a * u(-0.6, 0.6), cy + b * u(-0.8, 0.1), u(-1, 1) * half_z)
        paint(blob(centre, (a * u(0.04, 0.1), a * u(0.04, 0.1), a * u(0.05, 0.3)),
                   rotation=_rotation(u(0, np.pi), u(-0.5, 0.5), 0)),
              u(-950, -600) if u() < 0.3 else u(0, 40))
    spleen_z = u(-0.35, 0.35) * half_z
    if u() < 0.7:
        centre = (cx + a * u(0.1, 0.35), cy - b * u(0.15, 0.45), spleen_z + a * u(0.0, 0.3))
        radii = (a * u(0.12, 0.22), b * u(0.15, 0.3), a * u(0.2, 0.4))
        paint(blob(centre, radii), u(35, 50))
        lumen = blob(centre, tuple(r - 3.0 for r in radii))
        paint(lumen, u(0, 25))
        paint(lumen & (yy < centre[1] - u(0.2, 0.6) * radii[1]), u(-950, -800))

    # Liver: large, on the patient's right (−x), reaching higher than the spleen, and
    # brighter than it, as in unenhanced CT of a healthy liver.
    spleen_hu = u(44, 54)
    liver_hu = spleen_hu + u(10, 20)
    liver = blob((cx - a * u(0.3, 0.45), cy + b * u(-0.15, 0.1), spleen_z + a * u(0.0, 0.25)),
                 (a * u(0.35, 0.55), b * u(0.5, 0.8), a * u(0.45, 0.9)),
                 rotation=_rotation(u(-0.3, 0.3), u(-0.2, 0.2), u(-0.2, 0.2)),
                 lobes=[(k, u(0, 0.06), u(0, 2 * np.pi)) for k in (2, 3)])
    paint(liver, liver_hu + 0.5 * texture, organ=ORGAN_LABELS["liver"])

    # Kidneys, below the spleen, either side of the spine; a little renal sinus fat.
    for side in (-1, 1):
        centre = (cx + side * a * u(0.22, 0.34), cy + b * u(0.2, 0.42),
                  spleen_z - a * u(0.1, 0.4) + side * a * u(-0.05, 0.05))
        radii = (a * u(0.09, 0.14), b * u(0.12, 0.2), a * u(0.25, 0.4))
        rot = _rotation(side * u(0.2, 0.6), u(-0.2, 0.2), u(-0.2, 0.2))
        kidney = paint(blob(centre, radii, rotation=rot, bend=u(0.1, 0.4) * side), u(25, 40),
                       organ=ORGAN_LABELS["kidney"])
        paint(kidney & blob((centre[0] - side * radii[0] * 0.3, centre[1], centre[2]),
                            tuple(r * 0.35 for r in radii), rotation=rot), u(-90, -40), organ=ORGAN_LABELS["kidney"])

    # Spine (cortex, marrow, a spinous process), paraspinal muscles, aorta, ribs.
    spine_x, spine_y, spine_r = cx + a * u(-0.03, 0.03), cy + b * u(0.35, 0.55), a * u(0.08, 0.14)
    disc = (xx - spine_x) ** 2 + (yy - spine_y) ** 2
    for side in (-1, 1):
        paint(blob((spine_x + side * spine_r * u(1.0, 1.5), spine_y + spine_r * u(1.2, 1.7), 0),
                   (spine_r * u(0.7, 1.0), spine_r * u(0.9, 1.3), 1e6)), u(40, 58))
    paint(np.broadcast_to(disc <= spine_r ** 2, volume.shape), u(600, 1000), within=body)
    paint(np.broadcast_to(disc <= (0.8 * spine_r) ** 2, volume.shape), u(180, 320), within=body)
    paint(np.broadcast_to((np.abs(xx - spine_x) <= 0.25 * spine_r) & (yy > spine_y) & (yy - spine_y <= 2.2 * spine_r),
                          volume.shape), u(400, 800), within=body)
    aorta_r = a * u(0.05, 0.08)
    paint(np.broadcast_to((xx - spine_x - a * u(0.0, 0.12)) ** 2 + (yy - spine_y + spine_r + aorta_r * u(1.0, 1.6)) ** 2
                          <= aorta_r ** 2, volume.shape), u(35, 45) if u() < 0.5 else u(150, 280))
    rib_hu = u(400, 800)
    for _ in range(rng.integers(6, 14)):
        angle = u(-0.8, 0.8) * np.pi / 2 + (np.pi if u() < 0.5 else 0)   # lateral and posterior
        r = 1.0 - fat - muscle * 0.5
        centre = (cx + a * r * taper * np.cos(angle) * 0.97, cy + b * r * np.abs(np.sin(angle)) * 0.95)
        thick = a * u(0.015, 0.03)
        length = half_z * u(0.1, 0.4)
        paint(((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= thick ** 2)
              & (np.abs(zz - u(-1, 1) * half_z) <= length), rib_hu, within=body)

    # The spleen: left, posterolateral, against the body wall; painted last, so it is the label.
    spleen_radii = (a * u(0.1, 0.22), a * u(0.2, 0.38), a * u(0.22, 0.7))
    spleen_centre = (cx + a * u(0.42, 0.66), cy + b * u(-0.2, 0.4), spleen_z)
    spleen = blob(spleen_centre, spleen_radii,
                  rotation=_rotation(u(-0.7, 0.5), u(-0.25, 0.25), u(-0.25, 0.25)),
                  lobes=[(k, u(0, 0.1), u(0, 2 * np.pi)) for k in (2, 3, 5)], bend=u(0, 0.6))
    paint(spleen, spleen_hu + 0.5 * texture, organ=ORGAN_LABELS["spleen"])

    volume += _smooth_field(grid, rng, wavelength_mm=2.0 * a, amplitude=u(0, 6)) * body + u(-6, 6) * body
    _box_smooth(volume)
    volume += rng.normal(0, u(4, 18), volume.shape).astype(np.float32)
    return np.clip(volume, -1024, 3071).astype(np.int16), organs
