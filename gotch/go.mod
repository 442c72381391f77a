module github.com/gradnormlorp/gradnormlorp/gotch

go 1.24.0

require (
	github.com/gradnormlorp/gradnormlorp v0.0.0
	github.com/stretchr/testify v1.12.1
	github.com/sugarme/gotch v0.9.1
)

require (
	github.com/x448/float16 v0.8.4 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	gonum.org/v1/gonum v0.17.0 // indirect
)

// The root module, from this checkout.
replace github.com/gradnormlorp/gradnormlorp => ../

// gotch with CPU-only link flags: made by `make gotch-fork` (scripts/fork-gotch.sh).
replace github.com/sugarme/gotch => ../.cache/gotch/gotch-v0.9.1-cpu
