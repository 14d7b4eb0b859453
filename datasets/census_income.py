"""UCI Census-Income (KDD) with the MMoE task pair (Ma et al., KDD 2018, section 6.3).

File: ``census-income.test.gz`` (or ``census-income.data.gz`` / an uncompressed copy when
``file`` names it): comma-separated, 42 columns, no header, in the order of the UCI
``census-income.names`` (``COLUMNS`` below). Looked for at ``<root>/<file>`` or
``<root>/census_income/<file>``.

Tasks (binary; ``auc`` ↑, ``accuracy`` ↑): ``income`` = income > 50K (label ``50000+.``)
and ``never_married`` = marital status ``Never married``. Features: every other column
except the survey's ``instance_weight`` (UCI: not for classification); nominal columns
(including the numeric industry / occupation / ownership / veteran / year codes) one-hot,
the rest numeric; all standardised on the training split. Split: seeded by
``dataset.split_seed`` (= ``${seed}``), ``fractions`` 60/20/20 train/val/test. The paper
trains on the separate training file; its absolute numbers are not comparable here.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mtlbench.core.data import DataError, MTLData
from mtlbench.core.registry import DATASETS
from mtlbench.tasks.tabular import BinaryTask
from mtlbench.loaders.tabular import choose_tasks, dense_splits, find_file, row_split

COLUMNS = [
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends",
    "tax_filer_stat", "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ",
    "instance_weight", "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt",
    "num_emp", "fam_under_18", "country_father", "country_mother", "country_self", "citizenship",
    "own_or_self", "vet_question", "vet_benefits", "weeks_worked", "year", "income_50k",
]
NUMERIC = ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked"]
DROPPED = ["instance_weight", "income_50k", "marital_stat"]
TASKS = ["income", "never_married"]
HOW = ("get it with `python -m mtlbench data census_income` (census-income.test.gz, UCI Census-Income (KDD)) "
       "or set dataset.root=<folder holding it>")


def read_table(path):
    import pandas as pd

    try:
        df = pd.read_csv(path, header=None, skipinitialspace=True, na_values=None, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"cannot read {path} as census-income CSV ({type(exc).__name__}: {exc})") from exc
    if df.shape[1] != len(COLUMNS):
        raise DataError(f"{path}: {df.shape[1]} columns, expected {len(COLUMNS)} (UCI census-income.names)")
    df.columns = COLUMNS
    return df


def features_and_labels(df):
    import pandas as pd

    income = df["income_50k"].astype(str).str.strip().str.rstrip(".")
    if not income.isin(["50000+", "- 50000"]).all():
        raise DataError(f"unexpected income labels {sorted(set(income) - {'50000+', '- 50000'})[:3]}")
    y = np.stack([(income == "50000+").to_numpy(), (df["marital_stat"].astype(str).str.strip() == "Never married")
                  .to_numpy()], axis=1).astype(np.float32)
    nominal = [c for c in COLUMNS if c not in NUMERIC and c not in DROPPED]
    onehot = pd.get_dummies(df[nominal].astype(str), prefix=nominal, prefix_sep="=", dtype=np.float32)
    x = np.concatenate([df[NUMERIC].to_numpy(np.float32), onehot.to_numpy(np.float32)], axis=1)
    return x, y, NUMERIC + list(onehot.columns)


@DATASETS.register("census_income")
def build(root: Optional[str] = None, split_seed: int = 0, tasks: Optional[Sequence[str]] = None,
          file: str = "census-income.test.gz", fractions: Sequence[float] = (0.6, 0.2, 0.2),
          head_hidden: int = 0) -> MTLData:
    path = find_file(root, "census_income", file, HOW)
    x, y, feature_names = features_and_labels(read_table(path))
    keep = choose_tasks(TASKS, tasks, None, "census_income")
    names = [TASKS[k] for k in keep]
    index = row_split(len(x), tuple(float(f) for f in fractions), split_seed)
    splits = dense_splits(x, y[:, keep], names, index)
    return MTLData("census_income", [BinaryTask(n, head_hidden=head_hidden) for n in names], (x.shape[1],),
                   splits, info={"file": str(path), "features": len(feature_names)})
