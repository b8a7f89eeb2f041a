"""The trained model zoo: its entries, and how it is built, verified and tabulated."""

from workbench.zoo.build import build_zoo, measure, verify_zoo
from workbench.zoo.entries import ZOO, ZooEntry, zoo_entry, zoo_names
from workbench.zoo.readme import write_zoo_readme, zoo_table

__all__ = ["ZOO", "ZooEntry", "build_zoo", "measure", "verify_zoo", "write_zoo_readme", "zoo_entry",
           "zoo_names", "zoo_table"]
