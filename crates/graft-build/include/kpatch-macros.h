/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatch-macros.h - the callback macros of patches written for kpatch, for graft.
 *
 * Patches written for kpatch include this header by name and register callbacks with the
 * KPATCH_*_CALLBACK macros, receiving a `patch_object *`. graft provides the same names on top
 * of graft/patch.h, so such patches build unchanged: patch_object is the livepatch core's
 * struct klp_object, and each macro registers the function as the graft callback of the
 * object (vmlinux or the module) its unit belongs to.
 *
 * kpatch macros graft does not implement fail the compile with a message naming them, never
 * silently.
 */
#ifndef _GRAFT_KPATCH_MACROS_H
#define _GRAFT_KPATCH_MACROS_H

#include <graft/patch.h>

typedef struct klp_object patch_object;

/* The callback's signature is checked at compile time, as kpatch does. */
#define __GRAFT_KPATCH_CHECK(fn, ret)						\
	static inline ret (*__graft_kpatch_check_##fn(void))(patch_object *)	\
	{ return fn; }

#define KPATCH_PRE_PATCH_CALLBACK(fn)						\
	__GRAFT_KPATCH_CHECK(fn, int) GRAFT_PRE_PATCH(fn)
#define KPATCH_POST_PATCH_CALLBACK(fn)						\
	__GRAFT_KPATCH_CHECK(fn, void) GRAFT_POST_PATCH(fn)
#define KPATCH_PRE_UNPATCH_CALLBACK(fn)						\
	__GRAFT_KPATCH_CHECK(fn, void) GRAFT_PRE_UNPATCH(fn)
#define KPATCH_POST_UNPATCH_CALLBACK(fn)					\
	__GRAFT_KPATCH_CHECK(fn, void) GRAFT_POST_UNPATCH(fn)

/* Replace fn even if its compiled code is unchanged (kpatch: force a function in). */
#define KPATCH_FORCE_UNSAFE(fn)	GRAFT_ALWAYS_INCLUDE(fn)

#define __GRAFT_KPATCH_UNSUPPORTED(what)					\
	_Static_assert(0, what " is not supported by graft: change the patch instead")
#define KPATCH_IGNORE_SECTION(sec)	__GRAFT_KPATCH_UNSUPPORTED("KPATCH_IGNORE_SECTION")
#define KPATCH_IGNORE_FUNCTION(fn)	__GRAFT_KPATCH_UNSUPPORTED("KPATCH_IGNORE_FUNCTION")
#define KPATCH_IGNORE_STATIC(var)	__GRAFT_KPATCH_UNSUPPORTED("KPATCH_IGNORE_STATIC")
#define KPATCH_LOAD_HOOK(fn)		__GRAFT_KPATCH_UNSUPPORTED("KPATCH_LOAD_HOOK (use KPATCH_POST_PATCH_CALLBACK)")
#define KPATCH_UNLOAD_HOOK(fn)		__GRAFT_KPATCH_UNSUPPORTED("KPATCH_UNLOAD_HOOK (use KPATCH_PRE_UNPATCH_CALLBACK)")

#endif /* _GRAFT_KPATCH_MACROS_H */
