// Waiting for a file descriptor, with EINTR handled and a deadline.
// Every blocking wait in the library goes through here.
#pragma once

#include <chrono>
#include <string>

#include "base/error.h"

namespace ktm {

// Waits for `events` (POLLIN/POLLOUT/0 for errors only) on `fd`. A negative
// timeout waits forever. Returns the revents, 0 on timeout. Throws
// Error(kInternal) if poll itself fails.
short PollFd(int fd, short events, std::chrono::milliseconds timeout);

// Blocks until `fd` is readable (or writable), however long it takes.
void WaitFdReady(int fd, bool for_write);

// Waits up to `timeout` for `fd` to be readable (data, EOF or an error);
// true if it is.
bool WaitFdReadable(int fd, std::chrono::milliseconds timeout);

// Milliseconds for poll(2): negative -> -1 (forever), clamped to INT32_MAX.
int PollTimeoutMs(std::chrono::milliseconds t);

// Waits up to `timeout` (negative: forever) for `fd` to be readable or
// writable; on timeout throws Error(kTimeout): "no progress for N s while
// <reading from|writing to> <what>".
void WaitFdReadyOrThrow(int fd, bool for_write, std::chrono::milliseconds timeout, const std::string& what);

// The timeout error itself, for callers that detect the timeout otherwise
// (a blocking syscall returning EAGAIN after SO_RCVTIMEO/SO_SNDTIMEO).
Error IoTimeoutError(bool for_write, std::chrono::milliseconds timeout, const std::string& what);

// Sets SO_RCVTIMEO from `read` and SO_SNDTIMEO from `write` (negative:
// none) so blocking socket calls return EAGAIN after that long without
// progress.
void SetSocketTimeouts(int fd, std::chrono::milliseconds read, std::chrono::milliseconds write);

// shutdown(fd, SHUT_WR): the end of stream for the peer. Throws Error
// (kPeer when the connection was already reset: the end cannot reach
// `who`; SocketErrorKind otherwise) instead of letting it pass silently.
void ShutdownWriteOrThrow(int fd, const std::string& who);

// Sets or clears O_NONBLOCK, checking both fcntl calls. Throws
// Error(kInternal) naming `what` on failure.
void SetNonBlocking(int fd, bool nonblocking, const char* what = "fd");
// Whether O_NONBLOCK is set (checked fcntl).
bool IsNonBlocking(int fd);

}  // namespace ktm
