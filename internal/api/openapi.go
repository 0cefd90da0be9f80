package api

import _ "embed"

// openAPIDoc is the OpenAPI 3 description served at /api/v1/openapi.json.
//
//go:embed openapi.json
var openAPIDoc []byte
