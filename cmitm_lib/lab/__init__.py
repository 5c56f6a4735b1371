"""The lab: the embedded benchmark (Table 1/2, Fig. 2/3 in miniature, the claim) built on the library.

It imports `cmitm_lib`; no library module imports it (only the `cmitm` command line, which sits above both).
"""
