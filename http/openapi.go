package http

import _ "embed"

// openAPI is the OpenAPI 3 description of every route; a test keeps it
// true to the routes the server registers.
//
//go:embed openapi.json
var openAPI []byte
