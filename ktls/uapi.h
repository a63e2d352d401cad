// The kernel TLS socket interface (<linux/tls.h>) with the two constants
// older libc headers lack, for the files of ktls/ that talk to the kernel.
#pragma once

#include <linux/tls.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#ifndef SOL_TLS
#define SOL_TLS 282  // include/linux/socket.h
#endif
#ifndef TCP_ULP
#define TCP_ULP 31  // include/uapi/linux/tcp.h
#endif
