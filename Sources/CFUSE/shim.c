/* Header-only module: see include/cfuse.h. */
