package main

import "magestack/init/roleinit"

func roleInitMain(args []string) int { return roleinit.Main(args) }
