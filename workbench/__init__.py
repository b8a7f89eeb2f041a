"""The workbench: train models of every architecture, replace their MLPs by sparse features, trace
attribution graphs, intervene, and compile RASP programs into exact weights: one import root."""

__version__ = "0.1.0"
