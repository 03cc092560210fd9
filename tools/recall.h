/*
 * recall.h - `deltanet recall` (tools/recall.c): the MQAR in-context recall experiment.
 */
#ifndef DN_TOOLS_RECALL_H
#define DN_TOOLS_RECALL_H

#include "deltanet.h"

int dn_recall_main(int argc, char **argv);

#endif
