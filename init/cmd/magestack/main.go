// Command magestack is the whole userland of a magestack host: PID 1, the
// role environments' PID 1, the netboot server, the witness and the operator
// CLI. Which face runs is chosen by the process's pid, the name it was
// invoked as, or the first argument.
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// face is one of the binary's commands.
type face struct {
	name string
	help string
	run  func(args []string) int
}

// faces lists every command; each lives in its own face_*.go file.
func faces() []face {
	return []face{
		{"init", "PID 1 of a dedicated host (chosen automatically when the pid is 1)", initMain},
		{"modprobe", "load a kernel module and its dependencies (the kernel's modprobe helper)", modprobeMain},
		{"drbd-handler", "DRBD's event handler: fence-peer, split-brain (run by the kernel)", drbdHandlerMain},
		{"role-init", "PID 1 inside a role environment (started by init with a spec file)", roleInitMain},
		{"failover", "move roles between paired hosts: --to HOST (planned) or --force (no witness, no fence)", failoverMain},
		{"witness", "the tie-breaker vote for a pair; runs on any third machine", witnessMain},
		{"netboot", "PXE boot server for a rack of hosts (DHCP, TFTP, HTTP/iPXE); `netboot status`", netbootMain},
		{"status", "units and their state, health, CPU, memory, last exit [-o json]", statusMain},
		{"start", "start a unit: <role>[/<service>]", startMain},
		{"stop", "stop a unit: <role>[/<service>]", stopMain},
		{"restart", "restart a unit (also revives a failed one): <role>[/<service>]", restartMain},
		{"logs", "a unit's recent log lines: <role>[/<service>] [-f] [-n LINES]", logsMain},
		{"boot", "the boot timeline [-o json]", bootMain},
		{"volumes", "role data volumes: size, use, DRBD role, disk and link state, resync progress [-o json]", volumesMain},
		{"firewall", "the live nftables policy: show | check | allow add|remove PREFIX...", firewallMain},
		{"secrets", "the stack secret every password, certificate and key derives from: init -o FILE | id FILE", secretsMain},
		{"vpn", "management VPN: add-peer NAME prints a client config", vpnMain},
		{"config", "the stack file: validate | show | diff | fetch | apply | history | status | rollback [-o json]", configMain},
		{"scale", "run N instances of a role now (local override until the stack file changes it): web=N", scaleMain},
		{"maintenance", "a site's maintenance mode: on | off | status [SITE] [-o json]", maintenanceMain},
		{"reload", "reload a service's config in place, config test first: <instance>[/<service>]", reloadMain},
	}
}

func main() {
	os.Exit(dispatch(os.Args, os.Getpid()))
}

// dispatch picks the face: pid 1 is always init; a binary invoked as
// "modprobe" or "init" (symlink or /proc/sys/kernel/modprobe) runs that
// face; otherwise the first argument names it.
func dispatch(argv []string, pid int) int {
	all := faces()
	byName := map[string]face{}
	for _, f := range all {
		byName[f.name] = f
	}
	// role-init is PID 1 too, of its role's PID namespace.
	if pid == 1 && (len(argv) < 2 || argv[1] != "role-init") {
		return byName["init"].run(argv[1:])
	}
	if f, ok := byName[filepath.Base(argv[0])]; ok && f.name != "init" {
		return f.run(argv[1:])
	}
	if len(argv) < 2 || argv[1] == "help" || argv[1] == "-h" || argv[1] == "--help" {
		usage(os.Stdout, all)
		if len(argv) < 2 {
			return 2
		}
		return 0
	}
	f, ok := byName[argv[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "magestack: unknown command %q\n\n", argv[1])
		usage(os.Stderr, all)
		return 2
	}
	return f.run(argv[2:])
}

func usage(w io.Writer, all []face) {
	sort.Slice(all, func(i, j int) bool { return all[i].name < all[j].name })
	fmt.Fprintln(w, "usage: magestack <command> [arguments]\n\ncommands:")
	for _, f := range all {
		fmt.Fprintf(w, "  %-10s %s\n", f.name, f.help)
	}
}
