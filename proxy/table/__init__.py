"""The route table: routes.yaml as data (model), read with line numbers (loader), checked as a
whole (validate) and compiled into the immutable snapshot the data plane serves (compile)."""
