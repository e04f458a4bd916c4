package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/mrkrepl/mrkrepl/internal/natsauth"
)

// appFlag is the repeatable --app ACCOUNT=user,user flag of nats-config.
type appFlag []natsauth.App

func (a *appFlag) String() string { return fmt.Sprint(*a) }

func (a *appFlag) Set(v string) error {
	account, users, ok := strings.Cut(v, "=")
	if !ok || account == "" || users == "" {
		return fmt.Errorf("want ACCOUNT=user[,user…], got %q", v)
	}
	*a = append(*a, natsauth.App{Account: account, Users: strings.Split(users, ",")})
	return nil
}

// runNATSConfig is "mrkrepl nats-config": print the accounts block of a
// region's nats-server configuration (internal/natsauth, docs/NATS.md), to
// put in or include from every server's file of the region's cluster.
func runNATSConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("nats-config", "--region NAME [--app ACCOUNT=user,…]... [--admin]", stderr)
	region := fs.String("region", "", "the `region` whose cluster the accounts are for (required)")
	var apps appFlag
	fs.Var(&apps, "app", "an application account and its users, `ACCOUNT=user,…`; repeat for each (default "+natsauth.DefaultApp.Account+"="+strings.Join(natsauth.DefaultApp.Users, ",")+")")
	admin := fs.Bool("admin", false, "add the admin user to account "+natsauth.Account)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := required(fs, "region", *region); err != nil {
		return err
	}
	if len(apps) == 0 {
		apps = appFlag{natsauth.DefaultApp}
	}
	cfg, err := natsauth.Config(natsauth.Spec{Region: *region, Apps: apps, Admin: *admin})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errUsage
	}
	_, err = io.WriteString(stdout, cfg)
	return err
}
