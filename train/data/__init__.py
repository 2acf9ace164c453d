"""The data: records in, packed batches out, and a report of what was in them.

  pipeline.py       sources -> prompt templates -> curation -> tokens -> weighted mix -> batches
  packing.py        examples packed into rows of max_seq_len tokens; a seeded batch order
  curation.py       what the recipe's [curation] drops: lengths, duplicates, contamination
  dedup.py          exact and near (MinHash LSH) duplicates
  contamination.py  n-gram overlap with the evaluation instances eval exports (core/instances.py)
  ngrams.py         lm-eval's word normalisation, word ids and the n-gram hashes both checks use
  report.py         the data report (JSON, Markdown, a length plot)
"""
