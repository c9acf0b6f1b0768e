"""Which attributes belong to which query/retrieve level, as tables from the standard.

The study and series sets decide what a stored instance contributes to the study and series
rows (``attrs``); the ``*_RETURN`` tuples are the attributes a QIDO-RS answer carries by default
(PS3.18 Table 6.7.1-2, 6.7.1-2a and 6.7.1-2b). Tags are written as 8-digit hex strings, the form
of DICOM JSON keys (PS3.18 F.2.1.1).
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword


def _tags(*keywords: str) -> tuple[str, ...]:
    out = []
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is None:
            raise KeyError(kw)
        out.append(f"{tag:08X}")
    return tuple(out)


#: Attributes kept on the study row: the Patient module (PS3.3 C.7.1.1), General Study
#: (C.7.2.1) and Patient Study (C.7.2.2) modules, plus InstitutionName, which the
#: DRIMbox use cases search at study level.
STUDY_TAGS = frozenset(_tags(
    "SpecificCharacterSet", "TimezoneOffsetFromUTC",
    # Patient module (PS3.3 C.7.1.1)
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence",
    "OtherPatientNames", "EthnicGroup", "PatientComments", "PatientSpeciesDescription",
    "PatientBreedDescription", "ResponsiblePerson", "ResponsibleOrganization",
    "PatientIdentityRemoved", "DeidentificationMethod",
    # General Study module (PS3.3 C.7.2.1)
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "ReferencedStudySequence", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence", "RequestingService",
    # Patient Study module (PS3.3 C.7.2.2)
    "AdmittingDiagnosesDescription", "PatientAge", "PatientSize", "PatientWeight",
    "Occupation", "AdditionalPatientHistory", "PregnancyStatus",
    "InstitutionName",
))

#: Attributes kept on the series row: General Series module (PS3.3 C.7.3.1) and the series
#: keys of PS3.18 Table 6.7.1-1.
SERIES_TAGS = frozenset(_tags(
    "SpecificCharacterSet", "TimezoneOffsetFromUTC",
    "Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate", "SeriesTime",
    "PerformingPhysicianName", "ProtocolName", "SeriesDescription", "OperatorsName",
    "ReferencedPerformedProcedureStepSequence", "RelatedSeriesSequence", "BodyPartExamined",
    "PatientPosition", "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepDescription",
    "RequestAttributesSequence", "Manufacturer", "ManufacturerModelName", "StationName",
    "InstitutionName", "InstitutionalDepartmentName", "FrameOfReferenceUID",
))

#: Study attributes a QIDO-RS study search returns by default (PS3.18 Table 6.7.1-2).
STUDY_RETURN = _tags(
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
    "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)

#: Series attributes a QIDO-RS series search returns by default (PS3.18 Table 6.7.1-2a).
SERIES_RETURN = _tags(
    "SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
    "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "RequestAttributesSequence",
)

#: Instance attributes a QIDO-RS instance search returns by default (PS3.18 Table 6.7.1-2b).
INSTANCE_RETURN = _tags(
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
    "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
    "NumberOfFrames",
)

#: Value representations whose values go out as BulkDataURI when large (PS3.18 F.2.6 and
#: §8.7.3.1: bulk data is binary data, by VR).
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

#: A binary top-level value larger than this many bytes is bulk data, not InlineBinary.
BULK_THRESHOLD = 1024

PIXEL_DATA = "7FE00010"
