//go:build linux

package loadtest

// sysSetns is setns(2)'s number: the syscall package has it for every Linux
// architecture but amd64 and 386.
const sysSetns = 308
