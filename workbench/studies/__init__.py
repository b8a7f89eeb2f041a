"""Studies: a YAML spec -> a deterministic, resumable run -> parquet tables and plotly figures in the store.

``spec`` reads and checks a spec, ``methods`` declares what a step may name, ``adapters`` connects each
method to its ``workbench.interventions`` module, ``runner`` runs the units and catalogues the study,
``figures`` draws the tables. Study definitions live in the checkout's ``studies/`` folder.
"""

from workbench.studies.runner import StudyResult, load_study, run_study
from workbench.studies.spec import StudySpec, load_spec, parse_spec

__all__ = ["StudyResult", "StudySpec", "load_spec", "load_study", "parse_spec", "run_study"]
