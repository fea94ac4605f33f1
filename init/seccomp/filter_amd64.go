package seccomp

import "golang.org/x/sys/unix"

// deniedSyscalls are what a hosting workload never needs and what would let
// it reach past its environment: kernel code and modules, new mounts, the
// machine's clock, swap, power, BPF and perf, the kernel keyring, file
// handles that bypass the mount tree, raw I/O ports, and new namespaces
// (unshare, setns: an unprivileged user namespace is where most kernel
// escalations start; clone3 cannot be filtered by flags, and PID 1 of the
// host should set user.max_user_namespaces=0 when no role uses one).
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
}

// Program is the default filter for this architecture.
func Program() ([]unix.SockFilter, error) {
	return buildDenyFilter(unix.AUDIT_ARCH_X86_64, 0x40000000, deniedSyscalls), nil
}
