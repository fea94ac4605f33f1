package seccomp

import "golang.org/x/sys/unix"

// deniedSyscalls are what a hosting workload never needs and what would let
// it reach past its environment: kernel code and modules, new mounts, the
// machine's clock, swap, power, BPF and perf, the kernel keyring, file
// handles that bypass the mount tree, raw I/O ports, io_uring (a second
// syscall path with a long record of kernel escalations, which no role's
// software needs), and new namespaces (unshare, setns, and clone with a
// namespace flag: an unprivileged user namespace is where most kernel
// escalations start). clone3 passes its flags in memory, where a filter
// cannot look, and must stay: Go starts services with it (CLONE_INTO_CGROUP).
// What it could still make is closed elsewhere: a user namespace by the
// host's user.max_user_namespaces=0 (init/sysctl), every other kind by the
// roles' lack of CAP_SYS_ADMIN.
var deniedSyscalls = []uint32{
	unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD,
	unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE,
	unix.SYS_CREATE_MODULE, unix.SYS_GET_KERNEL_SYMS, unix.SYS_QUERY_MODULE,
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT,
	unix.SYS_FSOPEN, unix.SYS_FSCONFIG, unix.SYS_FSMOUNT, unix.SYS_FSPICK,
	unix.SYS_MOVE_MOUNT, unix.SYS_OPEN_TREE, unix.SYS_MOUNT_SETATTR,
	unix.SYS_SWAPON, unix.SYS_SWAPOFF, unix.SYS_REBOOT,
	unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN, unix.SYS_USERFAULTFD,
	unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY,
	unix.SYS_OPEN_BY_HANDLE_AT, unix.SYS_NAME_TO_HANDLE_AT,
	unix.SYS_IOPL, unix.SYS_IOPERM, unix.SYS_ACCT, unix.SYS_QUOTACTL,
	unix.SYS_SETTIMEOFDAY, unix.SYS_CLOCK_SETTIME, unix.SYS_CLOCK_ADJTIME,
	unix.SYS_SYSLOG, unix.SYS_LOOKUP_DCOOKIE, unix.SYS_NFSSERVCTL, unix.SYS_USELIB,
	unix.SYS_VHANGUP, unix.SYS__SYSCTL, unix.SYS_SYSFS,
	unix.SYS_UNSHARE, unix.SYS_SETNS,
	unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
}

// namespaceFlags are clone's flags that make a new namespace.
const namespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
	unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET

// Program is the default filter for this architecture.
func Program() ([]unix.SockFilter, error) {
	return policy{arch: unix.AUDIT_ARCH_X86_64, x32Bit: 0x40000000, deny: deniedSyscalls,
		clone: unix.SYS_CLONE, cloneDeny: namespaceFlags}.build(), nil
}
