package authz

// ContextLabel begins every non-empty encoded encryption context
// (EncodeContext). Callers that still accept raw additional data refuse
// raw data that begins with it, so that no raw AAD can pass for an encoded
// context that no policy saw.
const ContextLabel = contextLabel
