"""`uploader demo`: the whole system on throwaway local servers."""
