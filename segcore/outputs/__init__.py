"""Outputs of a segmented case: its record (:mod:`.records`), the mask, record, preview and
DICOM-SEG built and published together (:mod:`.case`), the preview image (:mod:`.preview`) and
the DICOM-SEG writer (:mod:`.dicom_seg`)."""
