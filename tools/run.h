/*
 * run.h - `deltanet run` (tools/run.c): a Hugging Face Qwen3.5 / Qwen3-Next checkpoint on the CPU.
 */
#ifndef DN_TOOLS_RUN_H
#define DN_TOOLS_RUN_H

#include "deltanet.h"

int dn_run_main(int argc, char **argv);

#endif
