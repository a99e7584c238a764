"""The Gradio demo (`cnndeploy serve`); Gradio is imported only when the demo starts.

`cnndeploy.serve.runtime` re-exports the embeddable classifier from `cnndeploy.runtime`.
"""
