"""The sharing node's federation: trusted peers, outbound calls to them, federated DICOMweb and FHIR."""
