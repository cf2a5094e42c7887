//go:build linux && !amd64 && !386

package loadtest

import "syscall"

// sysSetns is setns(2)'s number (see netns_setns_amd64.go).
const sysSetns = syscall.SYS_SETNS
