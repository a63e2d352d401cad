// The project's version: the CLI's --version, the C API's ktm_version(), the
// shared library's package and the pkg-config file (the Makefile reads it
// from here).
#pragma once

#define KTM_VERSION_STRING "0.1.0"
