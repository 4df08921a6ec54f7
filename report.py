"""Seeds and detectors side by side: ``python report.py <run or multirun dirs...>``.

See :mod:`deepsift.app.report` (mean ± std over seeds per detector × test set × metric;
runs that differ in more than the seed are never averaged together).
"""

from deepsift.app.report import main
from deepsift.core.errors import user_errors

if __name__ == "__main__":
    with user_errors():
        main()
