package main

import (
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"mrkrepl": main})
}

// TestScripts runs the CLI scripts in testdata/script (testscript format).
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			// The demo may use SoftHSM2; pass its switches through.
			for _, k := range []string{"MRKREPL_REQUIRE_SOFTHSM", "SOFTHSM2_CONF"} {
				env.Setenv(k, os.Getenv(k))
			}
			return nil
		},
	})
}
