/*
 * fileio.c - whole-file reads and atomic whole-file writes (fileio.h), with the I/O fault hook
 * the tests use to fail each step of a write in turn.
 */
#include "fileio.h"

#include "../internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static _Atomic long io_countdown = -1;
static _Atomic long io_count = 0;

void dn_fault_fail_io_after(long n) { atomic_store(&io_countdown, n); }
long dn_fault_io_count(void) { return atomic_load(&io_count); }

/* Whether the operation about to run is the one the hook fails (errno is then EIO). */
static int io_fault(void) {
    atomic_fetch_add(&io_count, 1);
    if (atomic_load(&io_countdown) >= 0 && atomic_fetch_sub(&io_countdown, 1) == 0) {
        errno = EIO;
        return 1;
    }
    return 0;
}

static dn_status io_fail(const char *path, const char *step, int err) {
    char reason[128];
    if (strerror_r(err, reason, sizeof reason)) snprintf(reason, sizeof reason, "errno %d", err);
    return dn_fail(DN_ERR_IO, "%s: cannot %s: %s", path, step, reason);
}

/* Largest piece handed to one read or write call (Linux moves at most ~2 GiB per call). */
#define IO_CHUNK ((size_t)1 << 30)

dn_status dn_file_read(const char *path, size_t max_bytes, char **out, size_t *n) {
    if (!path || !out || !n) return dn_fail(DN_ERR_NULL, "dn_file_read: NULL argument");
    int fd = io_fault() ? -1 : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return io_fail(path, "open it", errno);
    struct stat sb;
    dn_status st = DN_OK;
    char *buf = NULL;
    size_t got = 0;
    if (fstat(fd, &sb) != 0) {
        st = io_fail(path, "stat it", errno);
    } else if (!S_ISREG(sb.st_mode)) {
        st = dn_fail(DN_ERR_IO, "%s: not a regular file", path);
    } else if ((uint64_t)sb.st_size > max_bytes) {
        st = dn_fail(DN_ERR_FORMAT, "%s: %lld bytes, more than the %zu this file may have", path,
                     (long long)sb.st_size, max_bytes);
    } else if (!(buf = dn_alloc((size_t)sb.st_size + 1))) {
        st = dn_fail(DN_ERR_ALLOC, "%s: cannot allocate %lld bytes to read it", path,
                     (long long)sb.st_size);
    } else {
        const size_t size = (size_t)sb.st_size;
        while (got < size) { /* a file that shrank meanwhile ends early; one that grew is cut */
            size_t want = size - got < IO_CHUNK ? size - got : IO_CHUNK;
            ssize_t r = io_fault() ? -1 : read(fd, buf + got, want);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                st = io_fail(path, "read it", errno);
                break;
            }
            if (r == 0) break;
            got += (size_t)r;
        }
    }
    close(fd);
    if (st) {
        dn_free(buf);
        return st;
    }
    buf[got] = 0;
    *out = buf;
    *n = got;
    return DN_OK;
}

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        size_t want = n < IO_CHUNK ? n : IO_CHUNK;
        ssize_t w = io_fault() ? -1 : write(fd, c, want);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return 0;
        if (w == 0) { /* no progress and no error: treat as a full disk */
            errno = ENOSPC;
            return 0;
        }
        c += w, n -= (size_t)w;
    }
    return 1;
}

/* Best effort: makes the rename itself durable. */
static void sync_dir_of(const char *path, char *scratch) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        strcpy(scratch, ".");
    } else if (slash == path) {
        strcpy(scratch, "/");
    } else {
        memcpy(scratch, path, (size_t)(slash - path));
        scratch[slash - path] = 0;
    }
    int fd = open(scratch, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

dn_status dn_file_write_atomic(const char *path, const dn_file_part *parts, size_t n_parts) {
    if (!path || (!parts && n_parts)) return dn_fail(DN_ERR_NULL, "atomic write: NULL argument");
    size_t pl = strlen(path);
    if (pl == 0 || path[pl - 1] == '/')
        return dn_fail(DN_ERR_ARG, "atomic write: '%s' is not a file path", path);
    for (size_t i = 0; i < n_parts; i++)
        if (!parts[i].p && parts[i].n)
            return dn_fail(DN_ERR_NULL, "%s: part %zu of the file is NULL", path, i);
    char *tmp = dn_alloc(pl + 64);
    if (!tmp) return dn_fail(DN_ERR_ALLOC, "%s: out of memory", path);

    static _Atomic unsigned counter = 0;
    int fd = -1, err = 0;
    for (int attempt = 0; attempt < 64 && fd < 0; attempt++) {
        snprintf(tmp, pl + 64, "%s.tmp.%ld.%u", path, (long)getpid(),
                 atomic_fetch_add(&counter, 1));
        fd = io_fault() ? -1 : open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        err = errno;
        if (fd < 0 && err != EEXIST) break;
    }
    if (fd < 0) {
        dn_status st = io_fail(path, "create a temporary file beside it", err);
        dn_free(tmp);
        return st;
    }
    const char *step = NULL;
    for (size_t i = 0; i < n_parts && !step; i++)
        if (!write_all(fd, parts[i].p, parts[i].n)) step = "write it", err = errno;
    if (!step && (io_fault() || fsync(fd) != 0)) step = "flush it to disk (fsync)", err = errno;
    /* close even after a failure; its own failure (a deferred write error) counts too */
    int cerr = io_fault() ? EIO : 0;
    if (close(fd) != 0 && !cerr) cerr = errno;
    if (cerr && !step) step = "close it", err = cerr;
    if (!step && (io_fault() || rename(tmp, path) != 0))
        step = "rename the temporary over it", err = errno;
    if (step) {
        unlink(tmp);
        dn_status st = io_fail(path, step, err);
        dn_free(tmp);
        return st;
    }
    sync_dir_of(path, tmp);
    dn_free(tmp);
    return DN_OK;
}
