// Waiting for a file descriptor, with EINTR handled and a deadline.
// Every blocking wait in the library goes through here.
#pragma once

#include <chrono>

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

// Sets or clears O_NONBLOCK, checking both fcntl calls. Throws
// Error(kInternal) naming `what` on failure.
void SetNonBlocking(int fd, bool nonblocking, const char* what = "fd");
// Whether O_NONBLOCK is set (checked fcntl).
bool IsNonBlocking(int fd);

}  // namespace ktm
