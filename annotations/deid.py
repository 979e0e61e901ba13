"""De-identification of uploaded files, before anything is stored.

DICOM: the header goes through dicognito (https://github.com/blairconrad/dicognito), which
implements the PS3.15 Annex E Basic Application Level Confidentiality Profile: names, IDs,
addresses and institution are replaced, dates are shifted, and UIDs are remapped through a
keyed hash. The key is the centre's secret, so one study's UIDs map to the same new UIDs on
every upload from that centre and never collide with another centre's. The identity is then
replaced by the centre's pseudonym of the patient, the birth date removed, private tags
dropped. Pixel data are copied byte for byte without being loaded (a 2 GB cine stays on disk).

MP4/MOV, AVI and Matroska: container metadata (titles, comments, user data, XMP, tags) are
overwritten in place with padding of the same size, so the audio/video sample offsets stay
valid and the file still plays.

Burned-in text is pixels, not metadata: the copy written here stays in the private incoming
folder until the processing step (annotations.processing) has blanked everything outside the
ultrasound region and inside the centre's masks, in the stored frames and in the kept source
that storage holds instead of this copy (annotations.kept_source).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ml.video import VideoError

COPY_BLOCK = 8 * 1024 * 1024


def deidentify(src: Path, dst: Path, *, container: str, secret: str, pseudonym: str) -> None:
    """Write a de-identified copy of `src` to `dst` (both local paths)."""
    if container == "dicom":
        deidentify_dicom(src, dst, secret=secret, pseudonym=pseudonym)
        return
    shutil.copyfile(src, dst)
    if container in ("mp4", "mov"):
        scrub_isobmff(dst)
    elif container == "avi":
        scrub_avi(dst)
    elif container == "mkv":
        scrub_matroska(dst)


# --- DICOM ----------------------------------------------------------------------------------


def deidentify_dicom(src: Path, dst: Path, *, secret: str, pseudonym: str) -> None:
    with src.open("rb") as f:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except Exception as exc:  # noqa: BLE001 - any parser failure means "unreadable"
            raise VideoError(f"the DICOM file is damaged and cannot be read ({exc})") from exc
        pixels_at = f.tell()  # dcmread stops at the (7FE0,0010) tag, in the file's encoding
    meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = ds.original_encoding[0] if hasattr(ds, "original_encoding") else True
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit is not False else ExplicitVRLittleEndian
        )
    ds.file_meta = meta
    Anonymizer(seed=secret).anonymize(ds)
    ds.remove_private_tags()
    ds.PatientName = pseudonym
    ds.PatientID = pseudonym
    ds.PatientBirthDate = ""
    for keyword in ("PatientBirthTime", "OtherPatientIDsSequence", "OtherPatientNames",
                    "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
                    "MedicalRecordLocator", "PatientComments"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 Basic Profile (dicognito); burned-in text blanked"
    if "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds and "MediaStorageSOPClassUID" not in ds.file_meta:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    with dst.open("wb") as out:
        try:
            ds.save_as(out, enforce_file_format="SOPClassUID" in ds)
        except Exception as exc:  # noqa: BLE001
            raise VideoError(f"the DICOM header cannot be rewritten ({exc})") from exc
        with src.open("rb") as f:
            f.seek(pixels_at)
            shutil.copyfileobj(f, out, COPY_BLOCK)


# --- MP4 / MOV (ISO base media file format) -------------------------------------------------

_ISO_CONTAINERS = {b"moov", b"trak"}
_ISO_METADATA = {b"udta", b"meta", b"uuid", b"XMP_"}


def _blank_box(f, pos: int, size: int, header: int) -> None:
    f.seek(pos + 4)
    f.write(b"free")
    f.seek(pos + header)
    remaining = size - header
    zeros = bytes(min(remaining, COPY_BLOCK))
    while remaining > 0:
        n = min(remaining, len(zeros))
        f.write(zeros[:n])
        remaining -= n


def scrub_isobmff(path: Path) -> None:
    """Turn metadata boxes into `free` boxes of the same size (offsets stay valid)."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        stack = [(0, size, True)]
        while stack:
            start, end, top = stack.pop()
            pos = start
            while pos + 8 <= end:
                f.seek(pos)
                hdr = f.read(16)
                box_size, kind = struct.unpack_from(">I4s", hdr, 0)
                header = 8
                if box_size == 1 and len(hdr) == 16:
                    (box_size,) = struct.unpack_from(">Q", hdr, 8)
                    header = 16
                elif box_size == 0:
                    box_size = end - pos
                if box_size < header or pos + box_size > end:
                    break  # damaged or cut short: the decoder will say so
                if kind in _ISO_METADATA:
                    _blank_box(f, pos, box_size, header)
                elif kind in _ISO_CONTAINERS:
                    stack.append((pos + header, pos + box_size, False))
                pos += box_size


# --- AVI (RIFF) -----------------------------------------------------------------------------


def scrub_avi(path: Path) -> None:
    """Turn `LIST INFO` chunks (title, artist, comments...) into JUNK of the same size."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        stack = [(12, size)]
        while stack:
            start, end = stack.pop()
            pos = start
            while pos + 8 <= end:
                f.seek(pos)
                hdr = f.read(12)
                kind, length = hdr[:4], struct.unpack_from("<I", hdr, 4)[0]
                if pos + 8 + length > end:
                    break
                if kind == b"LIST" and hdr[8:12] == b"INFO":
                    f.seek(pos)
                    f.write(b"JUNK")
                    f.seek(pos + 8)
                    f.write(bytes(length))
                elif kind == b"LIST" and hdr[8:12] == b"hdrl":
                    stack.append((pos + 12, pos + 8 + length))
                pos += 8 + length + (length & 1)


# --- Matroska / WebM ------------------------------------------------------------------------

_EBML_SEGMENT = 0x18538067
_EBML_INFO = 0x1549A966
_EBML_TAGS = 0x1254C367
_EBML_TITLE = 0x7BA9
_EBML_VOID = 0xEC


def _vint(f) -> tuple[int, int, int]:
    """(value with marker, value without marker, length) of an EBML variable-size integer."""
    first = f.read(1)
    if not first:
        return -1, -1, 0
    b, length, mask = first[0], 1, 0x80
    while length <= 8 and not b & mask:
        mask >>= 1
        length += 1
    if length > 8:
        return -1, -1, 0
    rest = f.read(length - 1)
    raw, value = b, b & (mask - 1)
    for byte in rest:
        raw, value = (raw << 8) | byte, (value << 8) | byte
    return raw, value, length


def _void_element(f, pos: int, id_len: int, size_len: int, payload: int) -> None:
    """Rewrite the element at `pos` as an EBML Void of exactly the same total length."""
    header = id_len + size_len
    new_size_len = header - 1
    if not 1 <= new_size_len <= 8 or payload >= (1 << (7 * new_size_len)) - 1:
        return
    size_field = (1 << (7 * new_size_len)) | payload
    f.seek(pos)
    f.write(bytes([_EBML_VOID]) + size_field.to_bytes(new_size_len, "big"))
    f.write(bytes(payload))


def scrub_matroska(path: Path) -> None:
    """Void the Tags element and the segment Title."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        pos = 0
        stack = [(0, size, 0)]
        while stack:
            start, end, depth = stack.pop()
            pos = start
            while pos < end:
                f.seek(pos)
                elem_id, _, id_len = _vint(f)
                _, elem_size, size_len = _vint(f)
                if id_len == 0 or size_len == 0:
                    break
                unknown = elem_size == (1 << (7 * size_len)) - 1
                body = pos + id_len + size_len
                if elem_id == _EBML_SEGMENT and depth == 0:
                    stack.append((body, end if unknown else min(end, body + elem_size), 1))
                    if unknown:
                        break
                elif unknown or body + elem_size > end:
                    break
                elif elem_id == _EBML_TAGS and depth == 1:
                    _void_element(f, pos, id_len, size_len, elem_size)
                elif elem_id == _EBML_INFO and depth == 1:
                    stack.append((body, body + elem_size, 2))
                elif elem_id == _EBML_TITLE and depth == 2:
                    _void_element(f, pos, id_len, size_len, elem_size)
                pos = body + elem_size
