"""Task grouping: selection under a budget (Standley et al.), candidate generation, lookahead
affinity (TAG), grouped networks."""
from mtlbench.grouping.selection import (GroupingError, ScoreTable, Selection, candidate_groups,  # noqa: F401
                                         hoa_table, select)
