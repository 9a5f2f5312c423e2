"""
The reverse proxy: routing and the pipeline (L{resource}), header hygiene
(L{headers}), the upstream connection and relay (L{forward}) and the error
answers (L{errors}).
"""
