/*
 * fileio.h - whole-file reads and atomic whole-file writes for the model layer's files
 * (configs, checkpoints, indexes). Internal to the library.
 *
 * A write goes to a temporary file beside the target (same directory, so the rename cannot
 * cross filesystems), is flushed to disk, then renamed over the target: a reader sees the old
 * file or the new one, never a mix, and a failure at any step leaves the target as it was and
 * removes the temporary. Errors are DN_ERR_IO naming the path, the step and the system's reason.
 */
#ifndef DN_MODEL_FILEIO_H
#define DN_MODEL_FILEIO_H

#include "deltanet.h"

#include <stddef.h>

/* Reads the regular file at path into a new dn_alloc buffer *out of *n bytes, plus a NUL after
 * them (free with dn_free). Larger than max_bytes: DN_ERR_FORMAT. On error *out is unchanged. */
dn_status dn_file_read(const char *path, size_t max_bytes, char **out, size_t *n);

/* One piece of the file to write. */
typedef struct dn_file_part {
    const void *p;
    size_t n;
} dn_file_part;

/* Writes the concatenation of parts to path atomically (see above). The temporary is
 * "<path>.tmp.<pid>.<k>", created with mode 0666 less the umask. After the rename the directory
 * is synced too; that last sync is best effort (some filesystems refuse it), since the target
 * already holds the new content by then. */
dn_status dn_file_write_atomic(const char *path, const dn_file_part *parts, size_t n_parts);

/* Test hook: the n-th file-system operation from now of the two calls above (open, each read
 * or write, fsync, close, rename) fails with EIO, once; n < 0 turns it off.
 * dn_fault_io_count counts the operations tried since the start of the process. */
void dn_fault_fail_io_after(long n);
long dn_fault_io_count(void);

#endif
