/*
 * generate.h - `deltanet generate` (tools/generate.c): sampling text from a trained checkpoint.
 */
#ifndef DN_TOOLS_GENERATE_H
#define DN_TOOLS_GENERATE_H

#include "deltanet.h"

int dn_generate_main(int argc, char **argv);

#endif
