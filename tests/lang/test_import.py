"""`import sgflow` stays light: no torch, no runtime beyond its torch-free sampling_params."""

import subprocess
import sys


def test_import_pulls_in_neither_torch_nor_the_runtime():
    code = (
        "import sys, sgflow; "
        "bad = [m for m in sys.modules if m == 'torch' or (m.startswith('runtime') and m not in ('runtime', 'runtime.sampling_params'))]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=".")
    assert out.stdout.strip() == "[]"


def test_public_names_match_sglangs_frontend():
    import sgflow as sgl

    names = ("function gen gen_int gen_string select system user assistant system_begin system_end user_begin "
             "user_end assistant_begin assistant_end set_default_backend flush_cache get_server_info Runtime "
             "RuntimeEndpoint Engine OpenAI global_config token_length_normalized greedy_token_selection "
             "unconditional_likelihood_normalized").split()
    assert [n for n in names if not hasattr(sgl, n)] == []
