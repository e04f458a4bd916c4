package config

import (
	"flag"
	"fmt"
	"strings"
)

// EnvPrefix starts every environment variable the daemons read.
const EnvPrefix = "MRKREPL_"

// EnvName returns the environment variable that sets a flag:
// EnvName("nats-url") = "MRKREPL_NATS_URL".
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ApplyEnv sets each flag of fs whose environment variable (EnvName) is
// set and not empty. For the flags named in multi (repeatable flags), the
// variable holds several values separated by spaces. Call it after the
// flags are defined (with the file's values as defaults) and before
// fs.Parse, so that the command line wins.
func ApplyEnv(fs *flag.FlagSet, lookup func(string) (string, bool), multi ...string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || f.Name == "config" {
			return
		}
		name := EnvName(f.Name)
		v, ok := lookup(name)
		if !ok || v == "" {
			return
		}
		vals := []string{v}
		for _, m := range multi {
			if m == f.Name {
				vals = strings.Fields(v)
			}
		}
		for _, v := range vals {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s=%q: %v", name, v, serr)
				return
			}
		}
	})
	return err
}

// ConfigPath returns the configuration file named by --config in args (the
// last one given), else by MRKREPL_CONFIG, else "". It runs before the
// flags are parsed (their defaults come from the file), so it looks at
// every argument before "--"; the daemons take no positional arguments.
func ConfigPath(args []string, lookup func(string) (string, bool)) string {
	path, _ := lookup(EnvName("config"))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != "config" {
			continue
		}
		if hasVal {
			path = val
		} else if i+1 < len(args) {
			path = args[i+1]
			i++
		}
	}
	return path
}
