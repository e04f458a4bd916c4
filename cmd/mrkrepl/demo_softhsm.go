package main

import (
	"errors"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
)

func softhsmDemo(mode, dir string) (func(string) string, hsmsvc.Options, error) {
	return nil, hsmsvc.Options{}, errors.New("--hsm " + mode + ": not yet available")
}
