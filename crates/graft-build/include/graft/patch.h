/* SPDX-License-Identifier: GPL-2.0 */
/*
 * graft/patch.h - helpers for writing live patches with graft.
 *
 * A source patch may include this header (`#include <graft/patch.h>`); graft makes it
 * available while compiling the patched units. Nothing here changes how the unpatched kernel
 * is built: the header is only seen by the patched compile.
 *
 * Callbacks run when the object they belong to (vmlinux, or the module of the patched unit)
 * is patched or unpatched, e.g. to initialise state that new code needs:
 *
 *	static int my_fix_init(struct klp_object *obj)
 *	{
 *		return 0;		// non-zero aborts patching of this object
 *	}
 *	GRAFT_PRE_PATCH(my_fix_init);
 *
 * Shadow variables attach new data to existing objects without changing their layout
 * (a live patch cannot change existing data structures). Use the kernel's API directly:
 *
 *	#define MY_SHADOW_ID 1
 *	int *count = klp_shadow_get_or_alloc(obj, MY_SHADOW_ID, sizeof(*count),
 *					     GFP_ATOMIC, NULL, NULL);
 *	...
 *	klp_shadow_free_all(MY_SHADOW_ID, NULL);	// e.g. from GRAFT_POST_UNPATCH
 *
 * GRAFT_ALWAYS_INCLUDE(fn) makes graft replace fn even when its compiled code did not change,
 * for example when its behaviour depends on data the patch changes through a callback.
 */
#ifndef _GRAFT_PATCH_H
#define _GRAFT_PATCH_H

#include <linux/compiler.h>
#include <linux/livepatch.h>

typedef int (*graft_pre_fn)(struct klp_object *obj);
typedef void (*graft_post_fn)(struct klp_object *obj);

#define __GRAFT_ENTRY(section, type, fn)					\
	static type __graft_entry_##fn __used					\
		__section(".graft." section) = fn

/* Runs before the object is patched; a non-zero return aborts patching. */
#define GRAFT_PRE_PATCH(fn)	__GRAFT_ENTRY("pre_patch", graft_pre_fn, fn)
/* Runs after the object is patched. */
#define GRAFT_POST_PATCH(fn)	__GRAFT_ENTRY("post_patch", graft_post_fn, fn)
/* Runs before the object is unpatched. */
#define GRAFT_PRE_UNPATCH(fn)	__GRAFT_ENTRY("pre_unpatch", graft_post_fn, fn)
/* Runs after the object is unpatched. */
#define GRAFT_POST_UNPATCH(fn)	__GRAFT_ENTRY("post_unpatch", graft_post_fn, fn)

/* Replace fn even if its code is unchanged. */
#define GRAFT_ALWAYS_INCLUDE(fn)						\
	static void *__graft_force_##fn __used					\
		__section(".graft.force") = (void *)fn

#endif /* _GRAFT_PATCH_H */
