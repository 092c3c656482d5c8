from cotmod._cli import main

main()
