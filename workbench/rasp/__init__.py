"""RASP: the language and interpreter (``rasp``), and the compiler to exact HookedTransformers.

``from workbench.rasp import rasp`` gives tracr's language; ``compile_rasp_to_model`` (imported lazily,
so the language alone does not import torch) compiles a program; see ``workbench.rasp.compile``.
"""


def __getattr__(name: str):
    if name in ("compile_rasp_to_model", "CompiledModel"):
        from workbench.rasp import compile as _compile

        return getattr(_compile, name)
    raise AttributeError(f"module 'workbench.rasp' has no attribute {name!r}")
