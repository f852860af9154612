/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatch-syscall.h - KPATCH_SYSCALL_DEFINE<n> for patches written for kpatch, for graft.
 *
 * A patch that changes a system call replaces SYSCALL_DEFINE<n> with KPATCH_SYSCALL_DEFINE<n>.
 * The kernel's SYSCALL_DEFINE<n> also emits the syscall's ftrace metadata (new static data
 * and a __syscalls_metadata entry), which a live patch cannot add to the running kernel; this
 * variant defines the same entry points (__x64_sys_*, __se_sys_*, __do_sys_*) without it, so
 * only the code changes.
 */
#ifndef _GRAFT_KPATCH_SYSCALL_H
#define _GRAFT_KPATCH_SYSCALL_H

#include <linux/syscalls.h>

#define KPATCH_SYSCALL_DEFINE0(sname)	SYSCALL_DEFINE0(sname)
#define KPATCH_SYSCALL_DEFINE1(name, ...)	__SYSCALL_DEFINEx(1, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...)	__SYSCALL_DEFINEx(2, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...)	__SYSCALL_DEFINEx(3, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...)	__SYSCALL_DEFINEx(4, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...)	__SYSCALL_DEFINEx(5, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...)	__SYSCALL_DEFINEx(6, _##name, __VA_ARGS__)

#endif /* _GRAFT_KPATCH_SYSCALL_H */
