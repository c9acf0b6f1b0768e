"""What the FHIR side serves: resource types, their interactions and search parameters, as data.

One table drives everything that must agree: the search engine (which parameters answer, of
what type), the indexer of stored resources (which values to extract), the CapabilityStatement
and the SearchParameter resources of the custom parameters. A parameter is declared here only
when it really answers (the CapabilityStatement test checks each one).

Two kinds of resource types:

stored
    Patient, DiagnosticReport, Binary, Consent, DocumentReference: kept as FHIR JSON with their versions
    (:class:`~drimhub.store.models.FhirResource`); searched through the index table
    (:class:`~drimhub.store.models.FhirIndex`), one :class:`~drimhub.store.fhirquery.IndexValue` per value.
derived
    ImagingStudy (from the study / series / instance rows: its truth is DICOM) and Endpoint (from
    the node's configuration and, later, its peers): read and searched only; their parameters
    are answered by SQL over the tables they are derived from.

Sources: FHIR R4 (4.0.1) ``search-parameters.json`` for the standard parameters and their
expressions; ``imaging-study`` on DiagnosticReport is this server's own (R4 has no parameter on
``DiagnosticReport.imagingStudy``; R5 calls it ``study``).
"""

from __future__ import annotations

from dataclasses import dataclass

from drimhub.store.fhirquery import IndexValue  # the row type lives with the store that writes it

#: Canonical base of this server's own definitions (SearchParameter.url, CapabilityStatement.url).
CANONICAL_BASE = "https://drimhub.org/fhir"
FHIR_VERSION = "4.0.1"


@dataclass(frozen=True)
class SearchParam:
    """One search parameter of one resource type.

    Attributes
    ----------
    name : str
        The code clients use (``patient``, ``imaging-study``).
    type : str
        FHIR search parameter type: ``token``, ``string``, ``date``, ``reference``, ``uri``.
    expression : str
        The FHIRPath expression (R4 text for standard parameters), published as is.
    targets : tuple of str
        Resource types a reference parameter points to.
    custom : bool
        Not an R4 parameter: published as a SearchParameter resource of this server.
    """

    name: str
    type: str
    expression: str
    description: str
    targets: tuple[str, ...] = ()
    custom: bool = False

    @property
    def url(self) -> str:
        """Canonical URL (the HL7 one for standard parameters)."""
        base = self.expression.split(".", 1)[0]
        if self.custom:
            return f"{CANONICAL_BASE}/SearchParameter/{base}-{self.name}"
        return f"http://hl7.org/fhir/SearchParameter/{base}-{self.name}"


@dataclass(frozen=True)
class ResourceType:
    """A resource type this server serves, what may be done with it and how it is searched."""

    name: str
    derived: bool
    interactions: tuple[str, ...]
    params: tuple[SearchParam, ...]
    #: Reference parameters ``_include`` may follow from this type (``Type:param``).
    includes: tuple[str, ...] = ()
    #: ``Source:param`` of other types that point at this one (``_revinclude``).
    revincludes: tuple[str, ...] = ()
    #: ``_sort`` keys (search parameter names, ``_id``, ``_lastUpdated``).
    sorts: tuple[str, ...] = ("_id", "_lastUpdated")
    profile: str | None = None
    notes: str = ""

    def param(self, name: str) -> SearchParam | None:
        """The parameter called ``name`` (common ones included), or None."""
        return next((p for p in (*COMMON_PARAMS, *self.params) if p.name == name), None)


# --- the parameters ---------------------------------------------------------------------------

#: Parameters of every resource type (R4 "Parameters for all resources").
COMMON_PARAMS = (
    SearchParam("_id", "token", "Resource.id", "Logical id of this artifact"),
    SearchParam("_lastUpdated", "date", "Resource.meta.lastUpdated", "When the resource version last changed"),
)

_CLINICAL_TARGETS = ("Patient", "Group", "Device", "Location")

IMAGING_STUDY = ResourceType(
    name="ImagingStudy",
    derived=True,
    interactions=("read", "search-type"),
    params=(
        SearchParam("identifier", "token", "ImagingStudy.identifier",
                    "Identifiers for the Study, such as DICOM Study Instance UID and Accession number"),
        SearchParam("patient", "reference", "ImagingStudy.subject.where(resolve() is Patient)",
                    "Who the study is about", ("Patient",)),
        SearchParam("subject", "reference", "ImagingStudy.subject", "Who the study is about",
                    ("Patient", "Group", "Device")),
        SearchParam("started", "date", "ImagingStudy.started", "When the study was started"),
        SearchParam("modality", "token", "ImagingStudy.series.modality", "The modality of the series"),
        SearchParam("status", "token", "ImagingStudy.status", "The status of the study"),
        SearchParam("basedon", "reference", "ImagingStudy.basedOn", "The order for the image",
                    ("ServiceRequest", "CarePlan", "Appointment", "AppointmentResponse", "Task")),
        SearchParam("referrer", "reference", "ImagingStudy.referrer", "The referring physician",
                    ("Practitioner", "PractitionerRole")),
        SearchParam("endpoint", "reference", "ImagingStudy.endpoint | ImagingStudy.series.endpoint",
                    "The endpoint for the study or series", ("Endpoint",)),
        SearchParam("series", "token", "ImagingStudy.series.uid",
                    "DICOM Series Instance UID for a series"),
        SearchParam("instance", "token", "ImagingStudy.series.instance.uid",
                    "SOP Instance UID for an instance"),
        SearchParam("dicom-class", "token", "ImagingStudy.series.instance.sopClass",
                    "The type of the instance"),
        SearchParam("bodysite", "token", "ImagingStudy.series.bodySite",
                    "The body site studied"),
    ),
    includes=("ImagingStudy:patient", "ImagingStudy:subject", "ImagingStudy:endpoint"),
    revincludes=("DiagnosticReport:imaging-study",),
    sorts=("_id", "_lastUpdated", "started"),
    notes="Derived from the stored DICOM instances (STOW-RS); read-only over FHIR.",
)

DIAGNOSTIC_REPORT = ResourceType(
    name="DiagnosticReport",
    derived=False,
    interactions=("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                  "search-type"),
    params=(
        SearchParam("patient", "reference", "DiagnosticReport.subject.where(resolve() is Patient)",
                    "The subject of the report if a patient", ("Patient",)),
        SearchParam("subject", "reference", "DiagnosticReport.subject", "The subject of the report",
                    _CLINICAL_TARGETS),
        SearchParam("status", "token", "DiagnosticReport.status", "The status of the report"),
        SearchParam("category", "token", "DiagnosticReport.category",
                    "Which diagnostic discipline/department created the report"),
        SearchParam("code", "token", "DiagnosticReport.code", "The code for the report"),
        SearchParam("date", "date", "DiagnosticReport.effective", "The clinically relevant time of the report"),
        SearchParam("issued", "date", "DiagnosticReport.issued", "When the report was issued"),
        SearchParam("based-on", "reference", "DiagnosticReport.basedOn",
                    "Reference to the service request", ("CarePlan", "ImmunizationRecommendation",
                                                         "MedicationRequest", "NutritionOrder", "ServiceRequest")),
        SearchParam("identifier", "token", "DiagnosticReport.identifier", "An identifier for the report"),
        SearchParam("results-interpreter", "reference", "DiagnosticReport.resultsInterpreter",
                    "Who was the source of the report", ("CareTeam", "Organization", "Practitioner",
                                                         "PractitionerRole")),
        SearchParam("conclusion", "token", "DiagnosticReport.conclusionCode",
                    "A coded conclusion (interpretation/impression) on the report"),
        SearchParam("imaging-study", "reference", "DiagnosticReport.imagingStudy",
                    "The ImagingStudy the report is about", ("ImagingStudy",), custom=True),
    ),
    includes=("DiagnosticReport:patient", "DiagnosticReport:subject", "DiagnosticReport:imaging-study"),
    sorts=("_id", "_lastUpdated", "date", "issued"),
)

PATIENT = ResourceType(
    name="Patient",
    derived=False,
    interactions=("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                  "search-type"),
    params=(
        SearchParam("identifier", "token", "Patient.identifier", "A patient identifier"),
        SearchParam("name", "string", "Patient.name",
                    "A portion of either family or given name of the patient"),
        SearchParam("family", "string", "Patient.name.family", "A portion of the family name of the patient"),
        SearchParam("given", "string", "Patient.name.given", "A portion of the given name of the patient"),
        SearchParam("birthdate", "date", "Patient.birthDate", "The patient's date of birth"),
        SearchParam("gender", "token", "Patient.gender", "Gender of the patient"),
    ),
    revincludes=("ImagingStudy:patient", "DiagnosticReport:patient"),
    sorts=("_id", "_lastUpdated", "family", "birthdate"),
)

ENDPOINT = ResourceType(
    name="Endpoint",
    derived=True,
    interactions=("read", "search-type"),
    params=(
        SearchParam("connection-type", "token", "Endpoint.connectionType",
                    "Protocol/Profile/Standard to be used with this endpoint connection"),
        SearchParam("status", "token", "Endpoint.status", "The current status of the Endpoint (usually expected to be active)"),
        SearchParam("name", "string", "Endpoint.name", "A name that this endpoint can be identified by"),
    ),
    notes="The node's own DICOMweb base (and its peers' later): derived from the configuration, read-only.",
)

BINARY = ResourceType(
    name="Binary",
    derived=False,
    interactions=("read", "vread", "create", "update", "delete"),
    params=(),
    notes="Report documents (PDF, HTML); GET with Accept of the stored type returns the raw bytes, streamed.",
)

CONSENT = ResourceType(
    name="Consent",
    derived=False,
    interactions=("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                  "search-type"),
    params=(
        SearchParam("patient", "reference", "Consent.patient", "Who the consent applies to", ("Patient",)),
        SearchParam("status", "token", "Consent.status",
                    "draft | proposed | active | rejected | inactive | entered-in-error"),
        SearchParam("scope", "token", "Consent.scope", "Which of the four areas this resource covers (extensible)"),
        SearchParam("category", "token", "Consent.category",
                    "Classification of the consent statement - for indexing/retrieval"),
        SearchParam("date", "date", "Consent.dateTime", "When this Consent was created or indexed"),
        SearchParam("action", "token", "Consent.provision.action", "Actions controlled by this rule"),
        SearchParam("purpose", "token", "Consent.provision.purpose", "Context of activities covered by this rule"),
        SearchParam("period", "date", "Consent.provision.period", "Timeframe for this rule"),
        SearchParam("identifier", "token", "Consent.identifier", "Identifier for this record (external references)"),
    ),
    includes=("Consent:patient",),
    sorts=("_id", "_lastUpdated", "date"),
    notes="A patient's opposition to sharing (status active, scope patient-privacy, provision.type deny) refuses "
          "shares, pushes and peers' access to their studies, matched by the Patient and by its issuer-qualified "
          "identifiers (drimhub.sharing.consent); one naming no stored Patient nor identifier with a system is a 422.",
)

_MADO_SP = "IHE RAD MADO SearchParameter"

DOCUMENT_REFERENCE = ResourceType(
    name="DocumentReference",
    derived=False,
    interactions=("read", "vread", "history-instance", "history-type", "search-type"),
    params=(
        SearchParam("patient", "reference", "DocumentReference.subject.where(resolve() is Patient)",
                    "Who/what is the subject of the document", ("Patient",)),
        SearchParam("subject", "reference", "DocumentReference.subject",
                    "Who/what is the subject of the document",
                    ("Practitioner", "Group", "Organization", "Device", "Patient", "PractitionerRole", "Location")),
        SearchParam("status", "token", "DocumentReference.status", "current | superseded | entered-in-error"),
        SearchParam("type", "token", "DocumentReference.type", "Kind of document (LOINC if possible)"),
        SearchParam("date", "date", "DocumentReference.date", "When this document reference was created"),
        SearchParam("identifier", "token", "DocumentReference.masterIdentifier | DocumentReference.identifier",
                    "Master Version Specific Identifier"),
        # IHE RAD MADO (trial use), input/fsh/mhd/SearchParameter-DocumentReference-*.fsh
        SearchParam("study-instance-uid", "token",
                    "DocumentReference.context.related.identifier.where(type.coding.where("
                    "system = 'http://dicom.nema.org/resources/ontology/DCM' and code = '110180').exists())",
                    f"Study Instance UID of the manifest's study, urn:oid:<uid> or the bare UID ({_MADO_SP})",
                    custom=True),
        SearchParam("accession-number", "token",
                    "DocumentReference.context.related.identifier.where(type.coding.where("
                    "system = 'http://dicom.nema.org/resources/ontology/DCM' and code = '121022').exists())",
                    f"Accession Number of the manifest's study ({_MADO_SP})", custom=True),
        SearchParam("modality", "token",
                    "DocumentReference.extension('https://profiles.ihe.net/RAD/MADO/StructureDefinition/"
                    "ext-R5-DocumentReference.modality').value",
                    f"A modality of the manifest's study ({_MADO_SP})", custom=True),
        SearchParam("bodysite", "token",
                    "DocumentReference.extension('https://profiles.ihe.net/RAD/MADO/StructureDefinition/"
                    "ext-R5-DocumentReference.bodySite').value",
                    f"A body part examined in the manifest's study, SNOMED CT ({_MADO_SP})", custom=True),
    ),
    includes=("DocumentReference:patient", "DocumentReference:subject"),
    sorts=("_id", "_lastUpdated", "date"),
    notes="IHE RAD MADO: the KOS manifests this node published (POST /api/studies/{uid}/manifest); written by "
          "the node only, read-only over FHIR.",
)

#: Every resource type served under /fhir but AuditEvent (see drimhub.fhir.audit_routes).
RESOURCE_TYPES: dict[str, ResourceType] = {
    t.name: t for t in (IMAGING_STUDY, DIAGNOSTIC_REPORT, PATIENT, ENDPOINT, BINARY, CONSENT,
                        DOCUMENT_REFERENCE)
}


def resource_type(name: str) -> ResourceType | None:
    """The served resource type called ``name`` (case-sensitive, as FHIR type names are)."""
    return RESOURCE_TYPES.get(name)


def custom_params() -> list[tuple[ResourceType, SearchParam]]:
    """The parameters published as SearchParameter resources of this server."""
    return [(t, p) for t in RESOURCE_TYPES.values() for p in t.params if p.custom]


__all__ = ["CANONICAL_BASE", "COMMON_PARAMS", "FHIR_VERSION", "IndexValue", "RESOURCE_TYPES", "ResourceType",
           "SearchParam", "custom_params", "resource_type"]
