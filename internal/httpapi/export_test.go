package httpapi

// ReadRow is readRow, for the fuzz tests of package httpapi_test.
var ReadRow = (*Server).readRow
